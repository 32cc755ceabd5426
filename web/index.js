// The list of pages: translated, with the language switch.

import { initPage } from "./page.js";

initPage();
