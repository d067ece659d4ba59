// The same app on an inherited listening socket (fd 3), for the "raw processes" row:
// bench/apps/reuseport.py binds one SO_REUSEPORT socket per process and passes it as fd 3.
const http = require('http');
http.createServer(require('./handler')).listen({ fd: 3 });
