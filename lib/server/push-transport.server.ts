import { type CustomTransportStrategy, Server } from '@nestjs/microservices';

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
