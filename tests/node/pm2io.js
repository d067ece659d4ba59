// An app instrumented with PM2's @pm2/io, as written for PM2: a counter, a metric and two
// actions. Nothing herd-specific.
const io = require('@pm2/io');
const http = require('http');

const requests = io.counter({ name: 'Requests' });
io.metric({ name: 'Queue length', unit: 'jobs', value: () => 7 });
io.action('hello', (reply) => reply({ pid: process.pid, hello: 'world' }));
io.action('echo', (param, reply) => reply({ got: param }));

http
  .createServer((req, res) => {
    requests.inc();
    res.end(`pid=${process.pid}\n`);
  })
  .listen(Number(process.env.PORT));
