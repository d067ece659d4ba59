// An ES module app ("type": "module"): import syntax, top-level await, express.
import express from 'express';
import { setTimeout as sleep } from 'node:timers/promises';

await sleep(10);
const app = express();
app.get('/', (req, res) => res.send(`pid=${process.pid} esm=yes`));
app.get('/slow/:ms', async (req, res) => {
  await sleep(Number(req.params.ms));
  res.send(`pid=${process.pid} slow`);
});
const server = app.listen(Number(process.env.PORT), () => console.log(`esm pid ${process.pid} up`));
export default server;
