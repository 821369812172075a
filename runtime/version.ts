/** keel's version, recorded in logs and in inference receipts. Kept equal to package.json's. */
export const KEEL_VERSION = '0.1.0';
