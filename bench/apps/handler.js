// The request handler shared by every Node system in bench/compare.py: answers `hello`.
// Instrumentation for the benchmark only (no herd code, nothing manager-specific):
// - GET /count answers `<pid> <requests served so far, /count excluded>`, for the balance row;
// - when BENCH_MARK_DIR is set, the first request served writes `<pid>` there with the wall
//   time in ms, for the crash row's "SIGKILL to replacement serving".
const fs = require('fs');
const path = require('path');

const markDir = process.env.BENCH_MARK_DIR;
let count = 0;
let marked = !markDir;

module.exports = function handler(req, res) {
  if (req.url === '/count') {
    res.end(`${process.pid} ${count}`);
    return;
  }
  count++;
  if (!marked) {
    marked = true;
    const now = performance.timeOrigin + performance.now();
    try {
      fs.writeFileSync(path.join(markDir, String(process.pid)), now.toFixed(3));
    } catch (e) {}
  }
  res.end('hello');
};
