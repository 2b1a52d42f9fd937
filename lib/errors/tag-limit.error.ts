/** Thrown (as a rejection) by `PushService.tag` when a tag limit would be passed; nothing of that call is added. */
export class TagLimitError extends RangeError {
  constructor(
    readonly max: number,
    /** What is full, and the option that sets it. */
    readonly limit: 'send.maxTagEntries' | 'maxTagsPerDevice' = 'send.maxTagEntries',
  ) {
    super(
      limit === 'send.maxTagEntries'
        ? `Tag index is full (${max} memberships, option send.maxTagEntries); untag devices or raise the limit`
        : `A device may carry at most ${max} tags (redisCluster option maxTagsPerDevice); untag some first or raise it`,
    );
    this.name = 'TagLimitError';
  }
}
