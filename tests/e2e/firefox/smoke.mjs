// The playground in Firefox (Debian's firefox-esr) over WebDriver BiDi: puppeteer-core, no geckodriver and no
// browser download. Fills key, image, prompt, steps and seed, Generates, waits for the result and the history
// entry; prints what it saw as one JSON line for tests/e2e/test_playground.py to check.
// Usage: node smoke.mjs URL API_KEY IMAGE_PATH FIREFOX_PATH SEED
import puppeteer from 'puppeteer-core';

const [url, key, image, firefox, seed] = process.argv.slice(2);
const problems = [];
const browser = await puppeteer.launch({browser: 'firefox', executablePath: firefox, headless: true});
try {
  const page = await browser.newPage();
  page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
  page.on('console', (message) => {
    // a fetch answered 4xx is logged as "Failed to load"; the page handles those
    if (message.type() === 'error' && !message.text().startsWith('Failed to load')) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  // page.waitForFunction would build a Function() inside the page, which the page's CSP forbids: poll from here.
  const until = async (what, test, ms = 90000) => {
    for (const end = Date.now() + ms; Date.now() < end; await new Promise((resolve) => setTimeout(resolve, 100))) {
      if (await test()) return;
    }
    throw new Error(`timed out waiting for ${what}`);
  };
  const typeInto = async (selector, text) => {
    await page.$eval(selector, (input) => { input.value = ''; });
    await page.type(selector, text);
  };

  await page.goto(`${url}/playground`);
  await page.evaluate(() => window.playground.ready);
  await typeInto('#api-key', key);
  await (await page.$('#f-image')).uploadFile(image);
  await typeInto('#f-prompt', 'a fox in firefox');
  await typeInto('#f-num_inference_steps', '8');
  await typeInto('#f-seed', seed);
  await until('the preview', () => page.$eval('#image-info', (info) => info.textContent.endsWith(' px')));
  await page.click('#generate');
  const result = `img[alt*="seed ${seed}"]`;
  await until('the result', async () => (await page.$(result)) !== null);
  await until('the history entry', async () => (await page.$$('#history li')).length > 0, 10000);
  console.log(JSON.stringify({
    version: await browser.version(),
    status: await page.$eval('[role=status]', (status) => status.textContent),
    image: (await page.$eval(result, (img) => img.getAttribute('src'))).split(',')[1],
    history: await page.$$eval('#history li', (items) => items.map((item) => item.textContent)),
    problems,
  }));
} finally {
  await browser.close();
}
