export * from './push-config.error.js';
export * from './payload-too-large.error.js';
export { OfflineStoreFullError } from '../store/offline-store.js';
export { InvalidUuidError } from '../protocol/uuid.util.js';
export * from './pusher-rejected.error.js';
export * from './pusher-client.error.js';
export * from './push-failed.error.js';
export * from './push-request.error.js';
export * from './tag-limit.error.js';
