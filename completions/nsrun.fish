# fish completion for nsrun (installed by install.sh as
# /usr/local/share/fish/vendor_completions.d/nsrun.fish). Profile and namespace names come
# from `nsrun __complete profiles|namespaces`, which only reads directories.
set -l commands up down exec shell ls gc profiles unit demo
complete -c nsrun -f
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a up -d 'Bring up a persistent named namespace'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a down -d 'Remove a namespace and all nsrun made for it'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a exec -d 'Run CMD in an existing namespace'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a shell -d 'An interactive shell inside a namespace'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a ls -d 'Namespaces, addresses, processes'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a gc -d 'Reclaim what crashed runs left behind'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a profiles -d 'The profiles found, validated'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a unit -d 'Print a systemd service unit'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -a demo -d 'The seed scenario in a throwaway lab'
complete -c nsrun -s h -l help -d 'Show help'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -l version -d 'Print the version'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands; or __fish_seen_subcommand_from up shell unit" -s p -l profile -x -a '(nsrun __complete profiles 2>/dev/null; __fish_complete_suffix .toml)' -d 'Profile'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands" -s n -l name -x -a '(nsrun __complete namespaces 2>/dev/null)' -d 'Namespace'
complete -c nsrun -n "not __fish_seen_subcommand_from $commands; or __fish_seen_subcommand_from exec shell unit" -s u -l user -x -a '(__fish_complete_users)' -d 'Run CMD as USER'
complete -c nsrun -n "__fish_seen_subcommand_from up down exec shell" -a '(nsrun __complete namespaces 2>/dev/null)' -d 'Namespace'
complete -c nsrun -n "__fish_seen_subcommand_from down" -l refuse-busy -d 'Fail if processes are inside'
complete -c nsrun -n "__fish_seen_subcommand_from down" -l grace -x -d 'Seconds before SIGKILL'
complete -c nsrun -n "__fish_seen_subcommand_from shell" -l keep -d 'Keep a namespace shell created'
complete -c nsrun -n "__fish_seen_subcommand_from ls" -l json -d 'A JSON list'
complete -c nsrun -n "__fish_seen_subcommand_from gc" -l dry-run -d 'List, change nothing'
complete -c nsrun -n "__fish_seen_subcommand_from unit" -l install -d 'Write the unit file'
complete -c nsrun -n "__fish_seen_subcommand_from profiles; and not __fish_seen_subcommand_from show" -a show -d 'Print one profile resolved'
complete -c nsrun -n "__fish_seen_subcommand_from show" -a '(nsrun __complete profiles 2>/dev/null)' -d 'Profile'
