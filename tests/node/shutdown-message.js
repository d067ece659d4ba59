// PM2's shutdown_with_message: the app is told 'shutdown' and exits by itself.
const http = require('http');
const server = http.createServer((req, res) => res.end(`pid=${process.pid}`));
server.listen(process.env.PORT);
process.on('message', (msg) => {
  if (msg === 'shutdown') {
    console.log('got shutdown message');
    server.close(() => process.exit(0));
  }
});
