// kiln's version, read once from package.json; engines record it and refuse to load under another format.

import fs from "node:fs";

const pkgUrl = new URL("../../package.json", import.meta.url);
export const KILN_VERSION: string = JSON.parse(fs.readFileSync(pkgUrl, "utf8")).version;
