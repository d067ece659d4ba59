// A cluster script that checks what Node's one IPC channel promises, under herd --primary:
// a worker's messages reach the primary in the order sent, after the worker's `online` and
// `listening`; the primary's reach the worker in order too. Messages go through herd until
// the direct link is up and on the link after, so a burst that spans the switch is the test.
//
//   WORKERS  workers to fork (default 2)     COUNT  messages in each burst (default 2000)
//   BATCH    messages sent per turn of the event loop (default 50; COUNT: all at once)
//   BUSY_MS  on the first message of a burst, the receiver blocks this long (default 0):
//            the rest of the burst piles up on the way
//   OUT      a directory: on SIGUSR2 the primary makes 20 round trips with every worker and
//            writes OUT/rtt-<n> when they are done (the test stops the daemon meanwhile: only
//            the direct link can carry them).
//
// Lines it prints (the test reads them): `ORDER worker <id> ok <count> to primary|worker` or
// `ORDER worker <id> BROKEN …`, and `RTT <n> done`. A worker sends its burst as soon as it
// runs, then `{listened: true}` once it also listens: that must come after `listening`
// (as it does under Node: tests/node/primary-link.js runs as is under `node` too).
const cluster = require('node:cluster');
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const COUNT = Number(process.env.COUNT) || 2000;
const BATCH = Number(process.env.BATCH) || 50;
const BUSY_MS = Number(process.env.BUSY_MS) || 0;

function busy() {
  const until = Date.now() + BUSY_MS;
  while (Date.now() < until);
}

// Sends `count` messages BATCH per turn of the event loop, so the burst spans the link's start.
function burst(send, count, done) {
  let i = 0;
  (function next() {
    for (let k = 0; k < BATCH && i < count; k++) send({ seq: i++ });
    if (i < count) setImmediate(next);
    else if (done) done();
  })();
}

if (cluster.isPrimary) {
  const n = Number(process.env.WORKERS) || 2;
  const state = new Map(); // worker id → {events, next, broken}
  for (let i = 0; i < n; i++) {
    const w = cluster.fork();
    const st = { events: [], next: 0, broken: null };
    state.set(w.id, st);
    w.on('online', () => {
      st.events.push('online');
      burst((m) => w.send(m), COUNT);
    });
    w.on('listening', () => st.events.push('listening'));
    w.on('message', (msg) => {
      if (msg && msg.seq !== undefined) {
        if (msg.seq === 0) busy();
        if (st.broken) return;
        if (msg.seq !== st.next) st.broken = `expected ${st.next}, got ${msg.seq}`;
        else if (!st.events.includes('online')) st.broken = `message ${msg.seq} before online`;
        st.next++;
        if (st.broken) console.log(`ORDER worker ${w.id} BROKEN to primary: ${st.broken}`);
      } else if (msg && msg.listened) {
        if (st.broken) return;
        if (st.next !== COUNT) st.broken = `listened after ${st.next} messages`;
        else if (!st.events.includes('listening')) st.broken = 'its message after listen() came before listening';
        console.log(`ORDER worker ${w.id} ${st.broken ? `BROKEN to primary: ${st.broken}` : `ok ${COUNT} to primary`}`);
      } else if (msg && msg.received !== undefined) {
        console.log(`ORDER worker ${w.id} ${msg.broken ? `BROKEN to worker: ${msg.broken}` : `ok ${msg.received} to worker`}`);
      }
    });
  }
  let rounds = 0;
  process.on('SIGUSR2', async () => {
    const n = ++rounds;
    for (let k = 0; k < 20; k++) {
      for (const w of Object.values(cluster.workers)) {
        await new Promise((resolve) => {
          const on = (msg) => {
            if (msg && msg.pong === k) {
              w.off('message', on);
              resolve();
            }
          };
          w.on('message', on);
          w.send({ ping: k });
        });
      }
    }
    fs.writeFileSync(path.join(process.env.OUT, `rtt-${n}`), 'done\n');
    console.log(`RTT ${n} done`);
  });
} else {
  // At once (the link is not up yet), then on: through herd first, on the link after.
  let sent = false;
  let listened = false;
  const listenedOnce = () => {
    if (sent && listened) process.send({ listened: true });
  };
  burst((m) => process.send(m), COUNT, () => {
    sent = true;
    listenedOnce();
  });
  let next = 0;
  let broken = null;
  process.on('message', (msg) => {
    if (msg && msg.ping !== undefined) {
      process.send({ pong: msg.ping });
      return;
    }
    if (!msg || msg.seq === undefined) return;
    if (msg.seq === 0) {
      // A new burst (a restarted primary's).
      busy();
      next = 0;
      broken = null;
    }
    if (broken) return;
    if (msg.seq !== next) broken = `expected ${next}, got ${msg.seq}`;
    next++;
    if (broken || next === COUNT) process.send({ received: next, broken });
  });
  http
    .createServer((req, res) => res.end(`${process.pid}\n`))
    .listen(Number(process.env.PORT) || 0, () => {
      // Node's cluster sends `listening` right after this callback (a listener of the same
      // event): a message sent from here would come before it, under Node too.
      setImmediate(() => {
        listened = true;
        listenedOnce();
      });
    });
}
