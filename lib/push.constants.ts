/** `transportId` of the device port strategy (UDP/TCP 9966). */
export const DEVICE_TRANSPORT: unique symbol = Symbol.for('nest-push:device-transport');
/** `transportId` of the pusher port strategy (TCP 9999). */
export const PUSHER_TRANSPORT: unique symbol = Symbol.for('nest-push:pusher-transport');

/** Event patterns the device transport dispatches to `@EventPattern` handlers. */
export const DEVICE_EVENT_PATTERNS = {
  ack: 'push.ack',
  online: 'device.online',
  offline: 'device.offline',
  sent: undefined,
} as const;

/** Metadata key of the `@OnPushAck` / `@OnPushOutcome` / `@OnDeviceOnline` / `@OnDeviceOffline` decorators. */
export const PUSH_HANDLER_METADATA = 'nest-push:handler';
