export { LmdbOfflineStore, type LmdbOfflineStoreOptions, type MessageRetention } from './lmdb-offline-store.js';
export { OfflineStoreOpenError, OfflineStoreUnavailableError, type OfflineStoreOpenFailure } from './lmdb-errors.js';
