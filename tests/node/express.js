// An express app as people write it, plus a second server on port 0 (a metrics port, say),
// which under Node's cluster module is shared by all workers.
const express = require('express');
const http = require('http');

const app = express();
const metrics = http.createServer((req, res) => res.end('metrics'));
metrics.listen(0);

app.get('/', (req, res) => res.send(`pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE}`));
app.get('/slow/:ms', (req, res) => setTimeout(() => res.send(`pid=${process.pid} slow`), Number(req.params.ms)));
app.get('/metrics-port', (req, res) => res.send(String(metrics.address().port)));

app.listen(process.env.PORT || 3000, '0.0.0.0', () => console.log(`express pid ${process.pid} up`));
