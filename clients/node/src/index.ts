export {
  createCache,
  backoffDelay,
  TagCache,
  TimeoutError,
  FALLBACK_WARNING,
  type CacheOptions,
  type GetOrSetOptions,
  type SetOptions,
  type FactoryContext,
  type Logger,
  type Metrics,
} from './cache.js';
export { jsonSerializer, type Serializer } from './serializer.js';
export type { StatsDoc } from './backend.js';
export type { CircuitState } from './breaker.js';
export { mergeStats } from './backend.js';
