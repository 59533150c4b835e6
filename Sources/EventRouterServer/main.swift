// event-router: one per region; holds the streams of the region's hypervisor agents.
import ArgumentParser
import EventRouter
import EventRouterAPI
import ServiceRuntime

struct EventRouterCommand: ServiceCommand {
    static let configuration = CommandConfiguration(
        commandName: "event-router", abstract: "Event Router: pushes events to a region's hypervisors.")

    @Option(help: "The region this router serves.") var region: String
    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "Port to listen on (0: any free port).") var port = 50070
    @Option(help: "Harpoon, host:port (replicas: several, comma-separated).") var harpoon = "127.0.0.1:50050"
    @Option(
        help:
            "The address Harpoon reaches this router at, host:port, as Harpoon's --router lists it (default: --host and the port listened on)."
    )
    var advertise: String?
    @Option(
        help:
            "Seconds events are kept for an agent that is not connected here (it may have moved to another router of the region; Harpoon delivers them again)."
    )
    var abandonAfterSeconds = 60
    @Option(help: "The scheduler, host:port (replicas: several, comma-separated; each gets every report).")
    var scheduler = "127.0.0.1:50060"
    @Option(help: "Milliseconds between batches of hypervisor states to the scheduler.") var flushMilliseconds = 200
    @Option(help: "Seconds without a heartbeat before a hypervisor is unresponsive.") var heartbeatTimeoutSeconds = 5

    func run() async throws {
        let schedulers = try scheduler.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !schedulers.isEmpty else { throw ValidationError("--scheduler needs at least one host:port") }
        let harpoons = try harpoon.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !harpoons.isEmpty else { throw ValidationError("--harpoon needs at least one host:port") }
        if let advertise { _ = try ServiceRuntime.address(advertise) }
        guard abandonAfterSeconds >= 1 else { throw ValidationError("--abandon-after-seconds must be at least 1") }
        let harpoonClient = ServiceRuntime.serviceClient(harpoons)
        let router = Router(
            region: region,
            results: HarpoonResultSink(client: harpoonClient),
            fleet: SchedulerFleetSink(client: ServiceRuntime.serviceClient([schedulers[0]])),
            replicas: schedulers.dropFirst().map { SchedulerFleetSink(client: ServiceRuntime.serviceClient([$0])) },
            inventories: HarpoonInventorySource(client: harpoonClient),
            heartbeatTimeout: .seconds(heartbeatTimeoutSeconds),
            abandonAfter: .seconds(abandonAfterSeconds)
        )
        let server = RPCServer(
            configuration: .init(host: host, port: port), services: [EventRouterService(router: router)],
            interceptors: ServiceRuntime.serverInterceptors)
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: host)
        try await server.start()
        router.advertise(advertise ?? "\(host):\(server.port ?? port)")
        ServiceRuntime.announce("event-router \(region) ready on \(host):\(server.port ?? port)")
        let interval = Duration.milliseconds(flushMilliseconds)
        await ServiceRuntime.run(
            server: server, metrics: metrics,
            background: [
                { await router.run(flushInterval: interval) },
                ServiceRuntime.gauges(every: runtime.metricsSampleSeconds, server: server) {
                    ServiceRuntime.gauge("router_agents_connected", router.connectedAgents)
                },
            ])
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(EventRouterCommand.self)
