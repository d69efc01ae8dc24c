# bash completion for nsrun (installed by install.sh as
# /usr/local/share/bash-completion/completions/nsrun). Profile and namespace names come
# from `nsrun __complete profiles|namespaces`, which only reads directories.
_nsrun_names() {
    COMPREPLY+=($(compgen -W "$(command nsrun __complete "$1" 2>/dev/null)" -- "$2"))
}

_nsrun() {
    local cur prev sub i
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    local commands="up down exec shell ls gc profiles unit demo doctor"
    # After `--` the words belong to CMD: complete commands and files.
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == -- ]]; then
            if ((i == COMP_CWORD - 1)); then
                COMPREPLY=($(compgen -c -- "$cur"))
            else
                COMPREPLY=($(compgen -f -- "$cur"))
            fi
            return 0
        fi
    done
    case $prev in
        -p | --profile) _nsrun_names profiles "$cur"; COMPREPLY+=($(compgen -f -X '!*.toml' -- "$cur")); return 0 ;;
        -n | --name) _nsrun_names namespaces "$cur"; return 0 ;;
        -u | --user) COMPREPLY=($(compgen -u -- "$cur")); return 0 ;;
        --grace | -P | --publish) return 0 ;;
    esac
    sub=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -p | --profile | -n | --name | -u | --user | --grace | -P | --publish) ((i++)) ;;
            -*) ;;
            *) sub=${COMP_WORDS[i]}; break ;;
        esac
    done
    case $sub in
        '')
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "-p --profile -n --name -u --user -P --publish -h --help --version --" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$commands" -- "$cur"))
            fi ;;
        up) if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "-p --profile -P --publish -h --help" -- "$cur")); else _nsrun_names namespaces "$cur"; fi ;;
        down) if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "--refuse-busy --grace -h --help" -- "$cur")); else _nsrun_names namespaces "$cur"; fi ;;
        exec) if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "-u --user -h --help --" -- "$cur")); else _nsrun_names namespaces "$cur"; fi ;;
        shell) if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "-p --profile -u --user --keep -h --help" -- "$cur")); else _nsrun_names namespaces "$cur"; fi ;;
        ls) COMPREPLY=($(compgen -W "--json --wide -h --help" -- "$cur")) ;;
        gc) COMPREPLY=($(compgen -W "--dry-run -h --help" -- "$cur")) ;;
        profiles)
            if [[ $prev == show ]]; then _nsrun_names profiles "$cur"
            else COMPREPLY=($(compgen -W "show -h --help" -- "$cur")); fi ;;
        unit) COMPREPLY=($(compgen -W "-p --profile -u --user --install -h --help --" -- "$cur")) ;;
        demo) COMPREPLY=($(compgen -W "-h --help" -- "$cur")) ;;
        doctor) COMPREPLY=($(compgen -W "--json -h --help" -- "$cur")) ;;
    esac
    return 0
}
complete -F _nsrun nsrun
