import { type CustomTransportStrategy, Server } from '@nestjs/microservices';

/**
 * Idle TCP connections a transport cuts per event-loop turn, the rest on the
 * turns after. Why: destroying a socket costs tens of µs, and again in its
 * close callback, and a slowloris holds thousands of connections that go
 * idle together; cut in one pass, they stalled every other client for tens
 * of ms.
 */
export const IDLE_CUTS_PER_TURN = 64;

/**
 * Base of the two nest-push transports: each binds its sockets in `start()`,
 * usable without Nest, and Nest's `listen(callback)` just wraps it.
 */
export abstract class PushTransportServer<Events extends Record<string, Function>, Status extends string>
  extends Server<Events, Status>
  implements CustomTransportStrategy
{
  /** Binds the sockets. Idempotent. */
  abstract start(): Promise<void>;

  /** Nest's entry point: calls back once listening, or with the error. */
  async listen(callback: (...optionalParams: unknown[]) => unknown): Promise<void> {
    try {
      await this.start();
      callback();
    } catch (err) {
      callback(err);
    }
  }
}
