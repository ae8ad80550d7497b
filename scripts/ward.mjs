#!/usr/bin/env node
// `ward` from a source checkout: TypeScript runs through tsx's loader. The
// released gateway binary (scripts/build-binary, binary issue) bundles the
// compiled code instead and needs neither tsx nor Node installed.
import { register } from 'tsx/esm/api';

register();
await import('../agent/main.ts');
