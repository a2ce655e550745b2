class AsyncCache: pass
