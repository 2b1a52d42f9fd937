import { MemoryOfflineStore } from '../../../lib/store/memory-offline-store.js';
import { describeOfflineStoreContract } from './offline-store.contract.js';

describeOfflineStoreContract('MemoryOfflineStore', (limits) => new MemoryOfflineStore(limits));
