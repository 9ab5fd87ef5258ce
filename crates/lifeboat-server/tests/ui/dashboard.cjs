// The dashboard in a real browser: run by tests/server/dashboard.rs, which starts the server,
// prepares tenants, jobs, runs and users, and passes them in LIFEBOAT_UI_TEST (JSON).
// Headless Chromium is the system's (executablePath); playwright-core never downloads one.
// Each check prints "ok - ..." and the first failure throws, so the test shows where it broke.
"use strict";
const path = require("node:path");
const { chromium } = require(process.env.LIFEBOAT_TEST_PLAYWRIGHT);
const cfg = JSON.parse(process.env.LIFEBOAT_UI_TEST);

function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`);
  console.log(`ok - ${what}`);
}

const pathOf = (page) => new URL(page.url()).pathname;

async function signIn(page, user, password, code) {
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password", { exact: true }).fill(password);
  if (code) await page.getByLabel("Authentication code").fill(code);
  await Promise.all([
    page.waitForNavigation(),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
}

async function signOut(page) {
  await Promise.all([
    page.waitForNavigation(),
    page.getByRole("button", { name: "Sign out" }).click(),
  ]);
  check(pathOf(page) === "/ui/login", "signing out leads to the login page");
}

// Every visible form control has a label a screen reader can announce.
async function labelled(page, what) {
  const unlabelled = await page.$$eval("input:not([type=hidden]):not([hidden])", (inputs) =>
    inputs.filter((i) => i.labels.length === 0 && !i.getAttribute("aria-label")).map((i) => i.name));
  check(unlabelled.length === 0, `${what}: every input has a label (${unlabelled.join(", ")})`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(cfg.screenshots, name), fullPage: true });
}

async function main(browser) {
  const context = await browser.newContext({
    // The server's certificate is self-signed for this test run; this browser talks to it only.
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 860 },
  });
  const page = await context.newPage();
  const acmeTenant = `/ui/tenants/${cfg.acme.tenant}`;

  // Signed out, any page leads to the login form, and back after signing in.
  let response = await page.goto(cfg.base + acmeTenant);
  check(pathOf(page) === "/ui/login", "a signed-out visitor is sent to the login page");
  await labelled(page, "login page");
  await signIn(page, cfg.operator.username, "not the password at all");
  check(await page.getByRole("alert").textContent() === "Wrong user name, password or code.",
    "a wrong password is refused with a message");
  await signIn(page, cfg.operator.username, cfg.operator.password);
  check(pathOf(page) === acmeTenant, "after signing in the operator is back on the page asked for");

  // The tenant page: jobs with their last run, alerts, repositories; nothing of globex.
  check(await page.getByRole("heading", { level: 1 }).textContent() === "Tenant acme", "tenant heading");
  const jobs = page.locator('section[aria-labelledby="jobs"]');
  const acmeRow = jobs.getByRole("row").filter({ has: page.getByRole("link", { name: "acme", exact: true }) });
  check(/succeeded/.test(await acmeRow.textContent()), "job acme shows its last run succeeded");
  const brokenRow = jobs.getByRole("row").filter({ has: page.getByRole("link", { name: "broken", exact: true }) });
  check(/failed/.test(await brokenRow.textContent()), "job broken shows its last run failed");
  check(/Job broken \(backup\) failed/.test(await page.locator("#alerts + *").textContent()),
    "the failed job's alert is listed as firing");
  const body = await page.locator("body").textContent();
  check(!body.includes("globex"), "nothing of the other tenant appears");
  await shot(page, "tenant.png");

  // The job page: runs, and starting one.
  await Promise.all([page.waitForNavigation(), jobs.getByRole("link", { name: "acme", exact: true }).click()]);
  check(pathOf(page) === `${acmeTenant}/jobs/${cfg.acme.job}`, "the job link opens the job");
  const runRows = () => page.locator("table tbody tr");
  check(await runRows().count() === 1, "one run so far");
  await Promise.all([page.waitForNavigation(), page.getByRole("button", { name: "Run acme now" }).click()]);
  check((await page.getByRole("status").textContent()).includes("A run was started."), "Run now starts a run");
  for (let i = 0; i < 120 && !(await runRows().count() === 2 &&
       /succeeded/.test(await runRows().first().textContent())); i++) {
    await page.waitForTimeout(500);
    await page.goto(cfg.base + `${acmeTenant}/jobs/${cfg.acme.job}`);
  }
  const newest = await runRows().first().textContent();
  check(/succeeded/.test(newest) && /manual/.test(newest), "the new run appears, manual, succeeded");
  await shot(page, "job.png");

  // A run with its log.
  await page.goto(cfg.base + `${acmeTenant}/jobs/${cfg.acme.broken}`);
  await Promise.all([page.waitForNavigation(), page.locator("table tbody tr th a").first().click()]);
  check(/^Run of broken/.test(await page.getByRole("heading", { level: 1 }).textContent()), "run page heading");
  const log = await page.getByLabel("Run log").textContent();
  check(log.includes("/nonexistent/lifeboat-dashboard-test"), "the failed run's log names the missing path");
  await shot(page, "run.png");

  // Another tenant's ids: the same 404 as an unknown id; the audit log is not for operators.
  response = await page.goto(cfg.base + `/ui/tenants/${cfg.globex.tenant}/jobs/${cfg.globex.job}`);
  check(response.status() === 404, "another tenant's job page is 404");
  response = await page.goto(cfg.base + `${acmeTenant}/runs/${cfg.globex.run}`);
  check(response.status() === 404, "another tenant's run under one's own tenant is 404");
  check(!(await page.locator("body").textContent()).includes("globex"), "the 404 page says nothing of it");
  response = await page.goto(cfg.base + "/ui/audit");
  check(response.status() === 403, "an operator may not read the audit log");
  await page.goto(cfg.base + "/ui");
  await signOut(page);
  await page.goto(cfg.base + acmeTenant);
  check(pathOf(page) === "/ui/login", "after signing out the pages need a sign-in again");

  // A member of globex: its repositories and snapshots, no jobs, nothing of acme.
  await page.goto(cfg.base + "/ui/login");
  await signIn(page, cfg.member.username, cfg.member.password);
  check(pathOf(page) === "/ui", "the member lands on the overview");
  const tenants = await page.locator("table tbody th").allTextContents();
  check(tenants.length === 1 && tenants[0] === "globex", `the member sees only its tenant (${tenants})`);
  await Promise.all([page.waitForNavigation(), page.getByRole("link", { name: "globex" }).click()]);
  check(await page.locator("#jobs").count() === 0, "a member sees no jobs");
  await Promise.all([page.waitForNavigation(), page.getByRole("link", { name: "globex", exact: true }).click()]);
  check(/Repository globex/.test(await page.getByRole("heading", { level: 1 }).textContent()), "repository page");
  check(await page.locator("table tbody tr").count() === 1, "one snapshot listed");
  await shot(page, "member.png");
  for (const url of [acmeTenant, `${acmeTenant}/jobs/${cfg.acme.job}`,
                     `${acmeTenant}/repositories/${cfg.acme.repository}`, `/ui/tenants/${cfg.globex.tenant}/runs/${cfg.globex.run}`]) {
    response = await page.goto(cfg.base + url);
    const expected = url.includes(cfg.globex.tenant) ? 403 : 404;
    check(response.status() === expected, `member: ${url} answers ${expected}`);
    check(!(await page.locator("main").textContent()).includes("acme"), `member: ${url} shows nothing of acme`);
  }
  await page.goto(cfg.base + "/ui");
  await signOut(page);

  // First sign-in with a one-time password: the password must be changed first.
  await signIn(page, cfg.first_login.username, cfg.first_login.password);
  check(pathOf(page) === "/ui/password", "a one-time password leads to the password form");
  await page.goto(cfg.base + "/ui");
  check(pathOf(page) === "/ui/password", "no other page before the password is changed");
  await labelled(page, "password page");
  await page.getByLabel("Current password").fill(cfg.first_login.password);
  await page.getByLabel("New password", { exact: true }).fill(cfg.first_login.new_password);
  await page.getByLabel("New password again").fill("something else entirely");
  await Promise.all([page.waitForNavigation(), page.getByRole("button", { name: "Change password" }).click()]);
  check((await page.getByRole("alert").textContent()).includes("differ"), "two different new passwords are refused");
  await page.getByLabel("Current password").fill(cfg.first_login.password);
  await page.getByLabel("New password", { exact: true }).fill(cfg.first_login.new_password);
  await page.getByLabel("New password again").fill(cfg.first_login.new_password);
  await Promise.all([page.waitForNavigation(), page.getByRole("button", { name: "Change password" }).click()]);
  check(pathOf(page) === "/ui" && (await page.getByRole("status").textContent()).includes("changed"),
    "the password is changed and the overview opens");
  await page.goto(cfg.base + "/ui/audit");
  check(await page.locator("table tbody tr").count() > 0, "the tenant's auditor reads its audit log");
  await signOut(page);

  // The admin: every tenant, and the whole audit log.
  await signIn(page, cfg.admin.username, cfg.admin.password);
  const all = await page.locator("table tbody th").allTextContents();
  check(all.join(",") === "acme,globex", `the admin sees every tenant (${all})`);
  await page.goto(cfg.base + "/ui/audit");
  const audit = await page.locator("table").textContent();
  check(audit.includes("user:olivia") && audit.includes("job.start"), "the audit log shows the operator's run");
  await shot(page, "audit.png");
  await signOut(page);
  console.log("all dashboard checks passed");
}

(async () => {
  // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
  const browser = await chromium.launch({ executablePath: cfg.chromium, args: ["--no-sandbox"] });
  try {
    await main(browser);
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.log(String(error && error.stack || error));
  process.exit(1);
});
