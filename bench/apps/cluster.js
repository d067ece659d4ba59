// Node's own cluster module: a primary forks N workers (argv[2]) that run hello.js, and forks
// a replacement when one dies (what every cluster primary in production does). Default
// scheduling: round robin in the primary on Linux.
const cluster = require('cluster');

if (cluster.isPrimary) {
  const n = Number(process.argv[2] || require('os').availableParallelism());
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('exit', () => cluster.fork());
  process.on('SIGTERM', () => {
    cluster.removeAllListeners('exit');
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
    process.exit(0);
  });
} else {
  require('./hello.js');
}
