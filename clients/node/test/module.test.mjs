import { functionalSuite } from './suite.mjs';
functionalSuite('ioredis', { module: true });
functionalSuite('node-redis', { module: true });
