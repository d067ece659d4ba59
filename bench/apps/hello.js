// The Node hello app of bench/compare.py, as written for `node`, PM2 or herd: no herd code.
const http = require('http');
http.createServer(require('./handler')).listen(Number(process.env.PORT));
