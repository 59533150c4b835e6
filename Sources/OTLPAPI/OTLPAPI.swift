// Generated from Protos/opentelemetry/**.proto by the build plugin (OTLP's trace export, the part Shoal uses); this
// file only re-exports what the generated code is built on, so that users import one module.
@_exported public import ShoalRPC
