// Generated from Protos/harpoon/v1/harpoon.proto by the build plugin; this file only re-exports what the generated
// code is built on, so that users import one module.
@_exported public import SchedulerAPI
