import { SetMetadata } from '@nestjs/common';
import type { PushStatus } from '../interfaces/push-outcome.interface.js';
import { PUSH_HANDLER_METADATA } from '../push.constants.js';

/** What a decorated method listens to. */
export interface PushHandlerMetadata {
  event: 'ack' | 'outcome' | 'online' | 'offline';
  statuses?: readonly PushStatus[];
}

/**
 * Calls the method with every `DeviceAckEvent` (a device acked a push and the
 * store cleared it), including acks that arrive after the push timed out.
 */
export const OnPushAck = (): MethodDecorator => SetMetadata(PUSH_HANDLER_METADATA, { event: 'ack' } satisfies PushHandlerMetadata);

/**
 * Calls the method with every `PushOutcome` (from `PushService.send()` and the
 * pusher port alike), or only those with the given statuses.
 */
export const OnPushOutcome = (...statuses: PushStatus[]): MethodDecorator =>
  SetMetadata(PUSH_HANDLER_METADATA, { event: 'outcome', statuses: statuses.length ? statuses : undefined } satisfies PushHandlerMetadata);

/** Calls the method with every `DeviceOnlineEvent`. */
export const OnDeviceOnline = (): MethodDecorator => SetMetadata(PUSH_HANDLER_METADATA, { event: 'online' } satisfies PushHandlerMetadata);

/** Calls the method with every `DeviceOfflineEvent`. */
export const OnDeviceOffline = (): MethodDecorator => SetMetadata(PUSH_HANDLER_METADATA, { event: 'offline' } satisfies PushHandlerMetadata);
