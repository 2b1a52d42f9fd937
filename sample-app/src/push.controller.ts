import { BadRequestException, Body, Controller, Get, HttpCode, NotFoundException, Param, Post } from '@nestjs/common';
import { type PushOutcome, type PushRequest, PushService, isUuidHex } from 'nest-push';

/** Body of `POST /push`. */
interface PushBody {
  uuid?: string;
  key?: string;
  kind?: 'notice' | 'category' | 'message';
  /** category: decimal or 0x-hex string (JSON has no 64-bit integers). */
  mask?: string;
  /** message: a string, or any JSON value (sent JSON-encoded). */
  payload?: unknown;
  timeout?: number;
}

@Controller()
export class PushController {
  constructor(private readonly push: PushService) {}

  /** Sends a push and answers with the per-device outcomes. */
  @Post('push')
  @HttpCode(200)
  async send(@Body() body: PushBody): Promise<{ outcomes: PushOutcome[] }> {
    const target = body.uuid !== undefined ? { uuid: body.uuid } : body.key !== undefined ? { key: String(body.key) } : undefined;
    if (!target) throw new BadRequestException('give "uuid" (32 hex) or "key" (user key)');
    if (body.uuid !== undefined && !isUuidHex(body.uuid)) throw new BadRequestException('"uuid" must be 32 hex characters');
    const kind = body.kind ?? 'message';
    let request: PushRequest;
    if (kind === 'notice') request = { ...target, kind };
    else if (kind === 'category') {
      try {
        request = { ...target, kind, mask: BigInt(body.mask ?? '') };
      } catch {
        throw new BadRequestException('"mask" must be a decimal or 0x-hex string');
      }
    } else if (kind === 'message') {
      if (body.payload === undefined) throw new BadRequestException('"payload" is required for a message');
      request = { ...target, kind, content: body.payload as string | object };
    } else throw new BadRequestException('"kind" must be notice, category or message');
    if (body.timeout !== undefined) request.timeout = Number(body.timeout);
    const outcomes = await this.push.push(request);
    return { outcomes: outcomes.map(jsonSafe) };
  }

  /** The device's state as the DDPush console shows it. */
  @Get('devices/:uuid')
  async device(@Param('uuid') uuid: string) {
    if (!isUuidHex(uuid)) throw new BadRequestException('uuid must be 32 hex characters');
    const d = await this.push.inspect(uuid);
    if (!d) throw new NotFoundException(`no device ${uuid}`);
    return jsonSafe(d);
  }

  @Get('stats')
  stats() {
    return jsonSafe(this.push.stats());
  }
}

/** bigint and Buffer values as JSON-friendly strings. */
function jsonSafe<T>(value: T): T {
  return JSON.parse(
    JSON.stringify(value, (_k, v) => {
      if (typeof v === 'bigint') return '0x' + v.toString(16);
      if (v && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data)) return Buffer.from(v.data).toString('utf8');
      return v;
    }),
  );
}
