const http = require('http');
const handler = (req, res) => res.end('ok');
http.createServer(handler).listen(process.env.PORT, () => console.log('first listen ok'));
http.createServer(handler).listen(process.env.PORT);
