// hypervisor: a simulated hypervisor agent (or a fleet of them, each on its own connection).
import ArgumentParser
import EventRouterAPI
import HypervisorAgent
import ServiceRuntime

struct HypervisorCommand: ServiceCommand {
    static let configuration = CommandConfiguration(
        commandName: "hypervisor", abstract: "A simulated hypervisor agent.")

    @Option(
        help:
            "The region's event routers, host:port (several: comma-separated; an agent uses one and moves to another when it cannot reach it)."
    )
    var router = "127.0.0.1:50070"
    @Option(help: "The region.") var region: String
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "The hypervisor id (with --fleet, a prefix: ID-0, ID-1, ...).") var id = "hv"
    @Option(help: "Run this many agents in this process, each on its own connection.") var fleet = 1
    @Option(help: "CPUs.") var cpus: UInt32 = 32
    @Option(help: "Memory, MB.") var memoryMb: UInt64 = 131_072
    @Option(help: "Disk, GB.") var diskGb: UInt64 = 4000
    @Option(help: "Milliseconds each event takes.") var eventMilliseconds = 50
    @Option(help: "Fraction of events that fail (0 to 1).") var failureRate = 0.0
    @Option(help: "Milliseconds between heartbeats.") var heartbeatMilliseconds = 500
    @Option(help: "Memory, MB, the hypervisor keeps for itself: a create that would take it is refused.")
    var memoryReserveMb: UInt64 = 1024
    @Option(help: "Virtual CPUs allowed per CPU: a create past that is refused.") var cpuOvercommit = 4.0
    @Option(help: "Droplets a hypervisor hosts at most: a create past that is refused.") var maxDroplets = 135
    @Option(help: "Seconds a failed event counts among the recent errors an agent reports.") var errorWindowSeconds =
        600

    func validate() throws {
        guard fleet >= 1 else { throw ValidationError("--fleet must be at least 1") }
        guard (0...1).contains(failureRate) else { throw ValidationError("--failure-rate must be between 0 and 1") }
        guard cpuOvercommit > 0 else { throw ValidationError("--cpu-overcommit must be above 0") }
        guard maxDroplets >= 1 else { throw ValidationError("--max-droplets must be at least 1") }
        guard errorWindowSeconds >= 1 else { throw ValidationError("--error-window-seconds must be at least 1") }
    }

    func run() async throws {
        let addresses = try router.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !addresses.isEmpty else { throw ValidationError("--router needs at least one host:port") }
        // The agents' RPC client metrics (calls to the routers, by code and latency).
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: "127.0.0.1")
        let (fleet, id, region, router) = (self.fleet, self.id, self.region, self.router)
        let (cpus, memoryMb, diskGb, eventMilliseconds, failureRate) = (
            self.cpus, self.memoryMb, self.diskGb, self.eventMilliseconds, self.failureRate
        )
        let (heartbeatMilliseconds, memoryReserveMb, cpuOvercommit) = (
            self.heartbeatMilliseconds, self.memoryReserveMb, self.cpuOvercommit
        )
        let (maxDroplets, errorWindowSeconds) = (self.maxDroplets, self.errorWindowSeconds)
        // The fleet is one worker of the service's lifecycle: SIGTERM cancels it, and every agent's stream ends.
        let agents: @Sendable () async -> Void = {
            await withTaskGroup(of: Void.self) { group in
                // A fleet's heartbeats share one timer (a tenth of the interval, at most 100 ms, late at worst).
                let ticker =
                    fleet > 1
                    ? Ticker(resolution: min(.milliseconds(100), .milliseconds(heartbeatMilliseconds) / 10)) : nil
                if let ticker { group.addTask { await ticker.run() } }
                for index in 0..<fleet {
                    var configuration = AgentConfiguration(
                        hypervisorId: fleet == 1 ? id : "\(id)-\(index)", region: region)
                    configuration.cpus = cpus
                    configuration.memoryMB = memoryMb
                    configuration.diskGB = diskGb
                    configuration.subnet = UInt8(truncatingIfNeeded: index)
                    configuration.eventDuration = .milliseconds(eventMilliseconds)
                    configuration.failureRate = failureRate
                    configuration.heartbeatInterval = .milliseconds(heartbeatMilliseconds)
                    configuration.memoryReserveMB = memoryReserveMb
                    configuration.cpuOvercommit = cpuOvercommit
                    configuration.maxDroplets = maxDroplets
                    configuration.errorWindow = .seconds(errorWindowSeconds)
                    let agent = HypervisorAgent(configuration, ticker: ticker)
                    // Each agent has its own client, so its own HTTP/2 connection; the agents of a fleet start on the
                    // routers in turn, so they spread over them.
                    let first = index % addresses.count
                    let client = ServiceRuntime.serviceClient(Array(addresses[first...]) + Array(addresses[..<first]))
                    group.addTask { await agent.run(client: client) }
                }
                ServiceRuntime.announce("hypervisor: \(fleet) agent(s) in \(region) connecting to \(router)")
            }
        }
        await ServiceRuntime.run(server: nil, metrics: metrics, background: [agents], name: "hypervisor")
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(HypervisorCommand.self)
