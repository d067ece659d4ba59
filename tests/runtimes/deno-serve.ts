// A Deno.serve app as written for Deno alone: it binds PORT itself, and herd's port adoption
// hands it herd's socket (docs/runtimes.md). On SIGTERM it stops accepting and lets requests
// under way finish, so a reload fails nothing.
const server = Deno.serve(
  { port: Number(Deno.env.get("PORT") ?? 3000), onListen: () => {} },
  (): Response => new Response(`pid=${Deno.pid} instance=${Deno.env.get("HERD_INSTANCE")}\n`),
);
console.log(`deno-serve listening pid=${Deno.pid}`);
Deno.addSignalListener("SIGTERM", async () => {
  await server.shutdown();
  Deno.exit(0);
});
