"""The classification verbs: ``train`` and ``evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tomosift.recipe import METHODS, NORMALISATIONS, PRECISIONS, SCHEDULES, TrainingSettings


def add_commands(commands) -> None:
    """Add the classification subcommands to the ``tomosift`` parser's subparsers."""
    train = commands.add_parser("train", help="train a classifier on a dataset's train split")
    recipe = TrainingSettings()  # the paper's recipe, as the defaults
    train.add_argument("--data", required=True, type=Path, help="dataset file (HDF5)")
    train.add_argument("--model", required=True, choices=METHODS)
    train.add_argument("--out", required=True, type=Path, help="model file to write")
    train.add_argument("--epochs", type=int, default=recipe.epochs)
    train.add_argument("--batch-size", type=int, default=recipe.batch_size)
    train.add_argument("--learning-rate", type=float, default=recipe.learning_rate)
    train.add_argument("--lr-decay", type=float, default=recipe.lr_decay)
    train.add_argument("--dropout", type=float, default=recipe.dropout,
                       help="dropout rate (default: the model's; Inception3D 0.3 as the paper)")
    train.add_argument("--augment", action="store_true",
                       help="random 180° rotations that keep the missing wedge")
    train.add_argument("--normalise", choices=NORMALISATIONS, default=recipe.normalise)
    train.add_argument("--seed", type=int, default=recipe.seed)
    train.add_argument("--device", default=recipe.device, help="auto, cpu, cuda or cuda:N")
    train.add_argument("--precision", choices=PRECISIONS, default=recipe.precision)
    train.add_argument("--schedule", choices=SCHEDULES, default=recipe.schedule,
                       help="learning-rate schedule: the paper's decay or one cycle")
    train.add_argument("--threads", type=int, default=recipe.threads)
    train.add_argument("--input-binning", type=int, default=recipe.input_binning,
                       help="Fourier-bin subtomograms by this factor first (2: 40³ -> 20³)")
    train.add_argument("--exclude-class", action="append", default=[], metavar="NAME",
                       help="leave this class out of training (repeatable; leave-one-out)")
    train.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                       default=recipe.deterministic,
                       help="bit-reproducible training for a given thread count and device "
                       "(default on)")
    train.add_argument("--cache-volumes", action=argparse.BooleanOptionalAction,
                       default=recipe.cache_volumes,
                       help="hold the prepared train split in memory (default on)")
    train.add_argument("--embedding-dim", type=int, default=recipe.embedding_dim, metavar="D",
                       help="add an embedding head of D dimensions trained with the supervised "
                       "contrastive loss (features --layer embedding)")
    train.add_argument("--embedding-weight", type=float, default=recipe.embedding_weight,
                       help="weight of the contrastive loss beside the cross-entropy")
    train.add_argument("--embedding-temperature", type=float,
                       default=recipe.embedding_temperature,
                       help="temperature of the contrastive loss")
    train.add_argument("--class-average-members", type=int, default=100, metavar="N",
                       help="train particles averaged per class (true poses) for the class "
                       "averages stored in the model, census --references training "
                       "(default 100; 0: none)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="test a model on a dataset split")
    evaluate.add_argument("--model", required=True, type=Path)
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--split", choices=("test", "train", "all"), default="test")
    evaluate.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int, default=None,
                          help="CPU threads at most (default: all)")
    evaluate.set_defaults(handler=_evaluate)


def _train(args) -> None:
    from tomosift.classify.train import train_cnn, train_rif_svm

    if args.model == "rif-svm":
        record = train_rif_svm(args.data, args.out, seed=args.seed, threads=args.threads)
        cv = record["cv_accuracy"]
        print(f"{args.out}: RIF-SVM, C {record['chosen_c']:g}, gamma {record['chosen_gamma']}, "
              f"cross-validated accuracy {'n/a' if cv is None else f'{cv:.3f}'}")
        return
    settings = TrainingSettings(
        architecture=args.model, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_decay=args.lr_decay, augment=args.augment,
        dropout=args.dropout, normalise=args.normalise, seed=args.seed, device=args.device,
        threads=args.threads, precision=args.precision, input_binning=args.input_binning,
        exclude_classes=tuple(args.exclude_class), deterministic=args.deterministic,
        cache_volumes=args.cache_volumes, embedding_dim=args.embedding_dim,
        embedding_weight=args.embedding_weight,
        embedding_temperature=args.embedding_temperature, schedule=args.schedule,
    )
    history = train_cnn(args.data, settings, args.out,
                        class_average_members=args.class_average_members)
    last = history[-1]
    print(f"{args.out}: {args.model}, {len(history)} epochs, train loss {last.loss:.3f}, "
          f"train accuracy {last.accuracy:.3f}, {last.seconds_per_subtomogram:.4f} s per "
          "subtomogram per epoch")


def _evaluate(args) -> None:
    import json

    from tomosift.classify.predict import evaluate
    from tomosift.io import write_text

    metrics = evaluate(args.model, args.data, args.split, args.device, threads=args.threads)
    write_text(args.out, json.dumps(metrics, indent=1))
    print(f"{args.out}: {metrics['method']} accuracy {metrics['accuracy']:.3f} on "
          f"{metrics['n_subtomograms']} {args.split} subtomograms, "
          f"{metrics['inference_seconds_per_subtomogram']:.4f} s per subtomogram")
