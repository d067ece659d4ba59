// An app instrumented with prom-client's default registry, as people write it; the one line
// that makes herd's /metrics see every instance is marked.
const http = require('http');
const client = require('prom-client');

client.collectDefaultMetrics();
const requests = new client.Counter({
  name: 'app_requests_total',
  help: 'Requests served',
  labelNames: ['route'],
});
require('./herd').exposeMetrics(client.register); // herd: one scrape for every instance

http
  .createServer((req, res) => {
    requests.inc({ route: req.url });
    res.end(`pid=${process.pid}\n`);
  })
  .listen(Number(process.env.PORT));
