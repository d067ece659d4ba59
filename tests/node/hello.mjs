import http from 'node:http';
http.createServer((req, res) => res.end(`pid=${process.pid} mjs`)).listen(process.env.PORT);
