// A plain Node http server, written as for PM2 or `node server.js`: no herd code at all.
const http = require('http');
const cluster = require('cluster');

const port = Number(process.env.PORT || 3000);
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/slow/')) {
    const ms = Number(req.url.slice(6)) || 0;
    setTimeout(() => res.end(`pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE} slept=${ms}`), ms);
    return;
  }
  if (req.url === '/node-options') {
    res.end(`NODE_OPTIONS=${process.env.NODE_OPTIONS}`);
    return;
  }
  if (req.url === '/worker') {
    res.end(`isWorker=${cluster.isWorker} id=${cluster.worker && cluster.worker.id}`);
    return;
  }
  res.end(`pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE}`);
});
server.listen(port, () => console.log(`http.js pid ${process.pid} listening on ${port}`));

// Answer messages the way a PM2 app does, echoing the data back to whoever asked.
process.on('message', (msg) => {
  if (msg && msg.type === 'process:msg') {
    process.send({ type: 'process:msg', topic: 'echo', reply_to: msg.request, data: { echo: msg.data, pid: process.pid } });
  }
});
