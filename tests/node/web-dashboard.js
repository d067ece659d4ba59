// Drives herd's web dashboard (`herd web`) in a real headless Chromium, through puppeteer-core:
//   node web-dashboard.js <address with token> <app> <screenshot.png> <chromium binary>
// It opens the address (the token is exchanged for a cookie and the page loads), waits until
// the app and its instances show, checks the charts and the log tail fill, clicks the app's
// Reload button (accepting the confirmation), waits for the answer, and saves a screenshot.
// Lines it prints (the test reads them):
//   SHOWN <app> <instances shown>    LOGS <lines in the tail>
//   RELOADED <the daemon's answer>   NOCSRF <status of a POST from the page without the token>
//   ANON <status of the page for a browser without the cookie>
// Exits 1 with `FAILED <why>` on any failure.
const puppeteer = require('puppeteer-core');

const [url, app, shot, chrome] = process.argv.slice(2);

async function main() {
  const browser = await puppeteer.launch({
    executablePath: chrome,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('dialog', (d) => d.accept());
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    if (page.url().includes('token=')) throw new Error(`the token stayed in the address: ${page.url()}`);
    const card = `article[data-app="${app}"]`;
    await page.waitForFunction(
      (sel) => {
        const c = document.querySelector(sel);
        return c && [...c.querySelectorAll('tbody tr')].filter((tr) => /online/.test(tr.textContent)).length >= 2;
      },
      { timeout: 15000 },
      card,
    );
    const shown = await page.$$eval(`${card} tbody tr`, (trs) => trs.length);
    console.log(`SHOWN ${app} ${shown}`);
    // A few samples in the charts, and lines in the log tail.
    await page.waitForFunction(() => document.querySelectorAll('#log-lines div').length > 0, { timeout: 15000 });
    console.log(`LOGS ${await page.$$eval('#log-lines div', (d) => d.length)}`);
    await new Promise((r) => setTimeout(r, 2500));

    const before = await page.$eval('#toast', (t) => t.textContent);
    await page.click(`${card} button[data-action="reload"]`);
    await page.waitForFunction(
      (prev) => {
        const t = document.querySelector('#toast').textContent;
        return t !== prev && /^reload .*: /.test(t);
      },
      { timeout: 60000 },
      before,
    );
    const answer = await page.$eval('#toast', (t) => t.textContent);
    if (await page.$eval('#toast', (t) => t.classList.contains('bad'))) throw new Error(`reload failed: ${answer}`);
    console.log(`RELOADED ${answer}`);
    // Let the next state show the new pids in the screenshot.
    await new Promise((r) => setTimeout(r, 1500));
    await page.screenshot({ path: shot, fullPage: true });

    // The same origin, but without the CSRF token: refused.
    const nocsrf = await page.evaluate(async (a) => {
      const r = await fetch(`/api/apps/${a}/stop`, { method: 'POST' });
      return r.status;
    }, app);
    console.log(`NOCSRF ${nocsrf}`);
    // A browser without the cookie (a fresh context): 401.
    const anon = await browser.createBrowserContext();
    const p2 = await anon.newPage();
    const res = await p2.goto(new URL('/', url).href);
    console.log(`ANON ${res.status()}`);
    await anon.close();
    if (errors.length) throw new Error(`errors in the page: ${errors.join('; ')}`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(`FAILED ${e.message}`);
    process.exit(1);
  },
);
