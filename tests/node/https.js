// An HTTPS server as people write it (key and certificate from files), run as cluster
// workers: Node's TLS code needs the data its primary shares between workers (ticket keys).
const https = require('https');
const fs = require('fs');

https
  .createServer(
    { key: fs.readFileSync(process.env.TLS_KEY), cert: fs.readFileSync(process.env.TLS_CERT) },
    (req, res) => res.end(`pid=${process.pid} tls=yes\n`),
  )
  .listen(Number(process.env.PORT), () => console.log(`https worker ${process.pid} up`));
