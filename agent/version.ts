/** Ward's release version; test/unit/version.test.ts keeps it equal to package.json's. */
export const WARD_VERSION = '0.1.0';
