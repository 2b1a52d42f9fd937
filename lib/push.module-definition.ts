import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { PushModuleOptions } from './interfaces/push-module-options.interface.js';

export const {
  ConfigurableModuleClass: PushConfigurableModule,
  MODULE_OPTIONS_TOKEN: PUSH_MODULE_OPTIONS,
  OPTIONS_TYPE: PUSH_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: PUSH_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<PushModuleOptions>({ moduleName: 'Push' })
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createPushOptions')
  .setExtras({ isGlobal: false }, (definition, extras) => ({ ...definition, global: extras.isGlobal }))
  .build();
