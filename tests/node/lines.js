// Checks node/preload/lines.cjs (JSON lines on a socket, as herd's preloads use them) on its
// own: `node tests/node/lines.js <path of lines.cjs>`. Both ways over a Unix socket: many small
// lines, lines of multi-byte characters cut anywhere by the kernel, lines of a megabyte, and
// a line that is not an object (skipped). Prints `LINES ok <fast|stream> <count>` and exits 0,
// or prints what went wrong and exits 1. NODE_PENDING_DEPRECATION=1 takes the stream path.
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const fs = require('node:fs');
const { lines, usesHandle } = require(path.resolve(process.argv[2]));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herd-lines-'));
const sockPath = path.join(dir, 's');
const N = 20000;
const msgs = [];
for (let i = 0; i < N; i++) {
  if (i % 1000 === 7) msgs.push({ i, big: 'é'.repeat(512 * 1024) }); // 1 MiB of UTF-8
  else if (i % 3 === 0) msgs.push({ i, s: '한국어 ✓ 𝄞'.repeat(i % 50) });
  else msgs.push({ i });
}
const timer = setTimeout(() => fail('timed out'), 20000);
function fail(why) {
  console.log(`LINES FAILED: ${why}`);
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(1);
}
function receiver(name, done) {
  let next = 0;
  return (msg) => {
    const want = msgs[next];
    if (JSON.stringify(msg) !== JSON.stringify(want)) fail(`${name}: message ${next} differs`);
    next++;
    if (next === N) done();
  };
}
function sendAll(out) {
  out.write('"not an object"\n');
  for (const m of msgs) out.write(JSON.stringify(m) + '\n');
}
let finished = 0;
function oneDone() {
  if (++finished < 2) return;
  clearTimeout(timer);
  console.log(`LINES ok ${usesHandle() ? 'fast' : 'stream'} ${N}`);
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}
const server = net.createServer((sock) => {
  const out = lines(sock, receiver('server', oneDone));
  sendAll(out);
});
server.listen(sockPath, () => {
  const c = net.connect({ path: sockPath });
  c.on('connect', () => {
    const out = lines(c, receiver('client', oneDone));
    sendAll(out);
  });
  c.on('error', (e) => fail(e.message));
});
