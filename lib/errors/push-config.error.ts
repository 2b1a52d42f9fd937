/**
 * Invalid configuration, thrown at startup. The message names the option and
 * says what to change.
 */
export class PushConfigError extends Error {
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`nest-push: invalid option "${option}": ${message}`);
    this.name = 'PushConfigError';
  }
}
