import { Injectable, Logger } from '@nestjs/common';
import { type DeviceAckEvent, type DeviceOnlineEvent, OnDeviceOnline, OnPushAck } from 'nest-push';

/** Logs acks and devices coming online: decorated methods are found at bootstrap. */
@Injectable()
export class PushHandlers {
  private readonly logger = new Logger('Push');

  @OnPushAck()
  acked(e: DeviceAckEvent): void {
    this.logger.log(`ack ${e.kind} v${e.version} from ${e.uuid}`);
  }

  @OnDeviceOnline()
  online(e: DeviceOnlineEvent): void {
    this.logger.log(`online ${e.uuid} via ${e.transport} ${e.address}:${e.port}`);
  }
}
