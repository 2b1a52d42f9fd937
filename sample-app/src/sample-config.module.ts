import { Module } from '@nestjs/common';
import { loadSampleConfig } from './sample.config.js';

export const SAMPLE_CONFIG = Symbol('SAMPLE_CONFIG');

@Module({
  providers: [{ provide: SAMPLE_CONFIG, useFactory: loadSampleConfig }],
  exports: [SAMPLE_CONFIG],
})
export class SampleConfigModule {}
