// A Bun.serve app as written for Bun alone: it binds PORT itself, and herd's port adoption
// hands it herd's socket (docs/runtimes.md). On SIGTERM it stops accepting and lets requests
// under way finish, so a reload fails nothing.
const server = Bun.serve({
  port: Number(process.env.PORT ?? 3000),
  fetch(req: Request): Response {
    return new Response(`pid=${process.pid} instance=${process.env.HERD_INSTANCE}\n`);
  },
});
console.log(`bun-serve listening on ${server.port} pid=${process.pid}`);
process.on("SIGTERM", async () => {
  await server.stop();
  process.exit(0);
});
