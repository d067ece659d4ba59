// The app of bench/apply.py: answers `mode=<MODE> pid=<pid> hello` (MODE from its environment), so that
// a client sees which environment the instance that answered was started with. No herd code.
const http = require('http');
http
  .createServer((req, res) => res.end(`mode=${process.env.MODE} pid=${process.pid} hello`))
  .listen(Number(process.env.PORT));
