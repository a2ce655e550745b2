import { functionalSuite } from './suite.mjs';
functionalSuite('ioredis', { module: false });
functionalSuite('node-redis', { module: false });
