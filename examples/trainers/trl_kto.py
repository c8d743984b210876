"""Preference tuning with TRL's KTOTrainer on a kto file from `afs generate`.

Run by afs as, e.g.:

    afs retrain --train-cmd 'python examples/trainers/trl_kto.py --model Qwen/Qwen2.5-0.5B-Instruct'

with `format = "kto"` in [generator]. `--check-data` only loads and checks the dataset.
KTO wants both labels in the data: the script stops when one is missing.
"""

import sys

import afs_data


def main():
    args = afs_data.arguments("kto", __doc__.splitlines()[0])
    if args.check_data:
        afs_data.check_data(args)
        return
    train_dataset, _, _ = afs_data.load(args.data, "kto")
    labels = set(train_dataset["label"])
    if labels != {True, False}:
        sys.exit(f"{args.data} has only label {labels}; KTO needs thumbs-up and thumbs-down samples")

    from trl import KTOConfig, KTOTrainer

    config = KTOConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        save_strategy="no",
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
    )
    trainer = KTOTrainer(model=args.model, args=config, train_dataset=train_dataset)
    result = trainer.train()
    trainer.save_model(args.output_dir)
    trainer.processing_class.save_pretrained(args.output_dir)
    afs_data.report(args, result)


if __name__ == "__main__":
    main()
