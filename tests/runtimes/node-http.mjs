// A node:http app, for Bun's and Deno's Node layers: server.listen(PORT) as under Node.
// On SIGTERM it closes the server (requests under way finish) and exits.
import http from "node:http";
import process from "node:process";

const server = http.createServer((req, res) => {
  res.end(`pid=${process.pid} instance=${process.env.HERD_INSTANCE}\n`);
});
server.listen(Number(process.env.PORT ?? 3000), () => {
  console.log(`node-http listening pid=${process.pid}`);
});
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections?.();
});
