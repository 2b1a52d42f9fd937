/** Why an offline store could not start. */
export type OfflineStoreOpenFailure = 'not-writable' | 'corrupt' | 'in-use' | 'failed';

/**
 * The offline store could not open its data directory. Thrown by `open()`, so
 * a Nest app fails at startup (not at the first push) with a message naming
 * the directory and what to change.
 */
export class OfflineStoreOpenError extends Error {
  constructor(
    /** Absolute path of the data directory. */
    readonly path: string,
    readonly reason: OfflineStoreOpenFailure,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${messageFor(path, reason)} (${detail})`, options);
    this.name = 'OfflineStoreOpenError';
  }
}

function messageFor(path: string, reason: OfflineStoreOpenFailure): string {
  switch (reason) {
    case 'not-writable':
      return (
        `nest-push: the offline store directory "${path}" cannot be created or written. ` +
        `Point the store's path option (PushModule store.path, or new LmdbOfflineStore({ path })) at a writable directory, ` +
        `or give the server's user write permission on it`
      );
    case 'corrupt':
      return (
        `nest-push: the offline store at "${path}" holds a damaged or foreign data file (data.mdb). ` +
        `Restore it from a backup, or move the directory aside to start empty (the pushes pending in it are then lost), ` +
        `or point the store's path option (store.path) at another directory`
      );
    case 'in-use':
      return (
        `nest-push: the offline store directory "${path}" is already open in this process (another app or store instance). ` +
        `Give each app its own directory with the store's path option (store.path), or close the other one first`
      );
    default:
      return `nest-push: the offline store at "${path}" could not be opened; check the store's path option (store.path) and the directory's permissions and free space`;
  }
}

/** A write, ack or remove refused because the store is closed, or is recovering from a failed commit. */
export class OfflineStoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'OfflineStoreUnavailableError';
  }
}
