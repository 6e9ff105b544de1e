// A page in headless Chromium, driven over JSON lines: `node driver.mjs CHROMIUM URL [CHROMIUM_FLAG...]` opens URL,
// waits for its `window.mnv4` and prints {"ready": {"browser": "<Chromium's version>"}}; then each line on stdin,
// {"call": NAME, "args": [...]}, evaluates `await window.mnv4[NAME](...args)` in the page and prints one line,
// {"result": ...} or {"error": "<one line>"}. As a user would: {"upload": SELECTOR, "file": PATH} chooses a file in
// the page's file input, {"table": SELECTOR} waits for that table to have rows and answers their cells' texts. The page's uncaught errors and its console's errors and warnings go to
// stderr. The browser closes when stdin ends or on SIGTERM/SIGINT.
import {createInterface} from 'node:readline';

import {chromium} from 'playwright-core';

const [executablePath, url, ...args] = process.argv.slice(2);

function oneLine(error) {
  const text = String(error?.message ?? error).trim().split('\n')[0];
  // What page.evaluate adds before the page's own message.
  return text.replace(/^page\.evaluate: (Error: )?/, '') || 'unknown error';
}

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function open() {
  const browser = await chromium.launch({executablePath, args, headless: true});
  const page = await browser.newPage();
  page.on('pageerror', (error) => console.error(`page error: ${oneLine(error)}`));
  page.on('console', (message) => {
    if (['error', 'warning'].includes(message.type())) console.error(`console ${message.type()}: ${message.text()}`);
  });
  page.on('crash', () => console.error('page crashed'));
  await page.goto(url);
  await page.waitForFunction(() => window.mnv4 !== undefined);
  return {browser, page};
}

async function serve({browser, page}) {
  send({ready: {browser: browser.version()}});
  for await (const line of createInterface({input: process.stdin})) {
    if (!line.trim()) continue;
    try {
      const result = await answer(page, JSON.parse(line));
      send({result: result ?? null});
    } catch (error) {
      send({error: oneLine(error)});
    }
  }
}

async function answer(page, {call, args = [], upload, file, table}) {
  if (upload) return page.setInputFiles(upload, file);
  if (table) {
    await page.waitForFunction((selector) => document.querySelector(selector)?.rows.length > 0, table, {timeout: 0});
    return page.$$eval(`${table} tr`, (rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent)));
  }
  return page.evaluate(([name, values]) => {
    if (typeof window.mnv4[name] !== 'function') throw new Error(`the page has no mnv4.${name}`);
    return window.mnv4[name](...values);
  }, [call, args]);
}

let session = null;

async function close(code) {
  await session?.browser.close().catch(() => {});
  process.exit(code);
}

process.on('SIGTERM', () => close(143));
process.on('SIGINT', () => close(130));

try {
  session = await open();
  await serve(session);
  await close(0);
} catch (error) {
  send({error: oneLine(error)});
  await close(1);
}
