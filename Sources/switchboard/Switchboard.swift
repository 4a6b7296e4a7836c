import ArgumentParser

@main
struct SwitchboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "A WebSocket gateway that scales out over Redis and never loses a message silently.",
        subcommands: [Serve.self, Token.self, Proxy.self, Config.self, Bench.self],
        defaultSubcommand: Serve.self
    )
}
